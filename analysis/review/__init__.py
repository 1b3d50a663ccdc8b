"""The listening review behind ``python -m tools.review``: sampling, storage, statistics, page."""
