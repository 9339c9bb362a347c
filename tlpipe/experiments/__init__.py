"""Experiments over the pipeline, run by DVC's own queue: tune (a validation-only search), cv
(k-fold cross-validation) and compare (revisions side by side, paired on the test images).

The top layer: it may use data, model, train and use; nothing there imports it."""
