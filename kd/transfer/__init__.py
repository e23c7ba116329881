"""Synthetic transfer sets: rows for the ensemble to label when real unlabeled rows are scarce
(munge.py: MUNGE, Bucilua et al. 2006), and the stored set as export reads it (stored.py).
Pure numpy + scikit-learn; the stage is stages/transfer.py."""
