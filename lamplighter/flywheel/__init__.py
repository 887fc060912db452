"""The data flywheel: feedback, consent, cleaning and export of training data."""
