"""How an ensemble member produces logits. Today every member is native (trained here, a model
directory under data/teachers/<member>/); other kinds plug in beside `native`."""
