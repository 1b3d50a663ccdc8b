"""The listening review behind ``local/review.py``: sampling, storage, statistics, page."""
