"""training: the consumer that proves the feed (``python -m training.fit``; see the training issue)."""
