"""A ckd peer: private data, a learner, and the CKD algorithm, free of any transport."""
