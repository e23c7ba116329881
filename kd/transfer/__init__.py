"""Synthetic transfer sets: rows for the ensemble to label when real unlabeled rows are scarce
(munge.py: MUNGE, Bucilua et al. 2006). Pure numpy + scikit-learn; the stage is
stages/transfer.py."""
