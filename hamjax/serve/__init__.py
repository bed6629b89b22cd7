"""Serving exported models: ``hamjax serve``, dynamic batching, metrics, drift monitoring and A/B tests.

FastAPI, uvicorn and prometheus-client come with the ``serve`` extra
(``pip install "hamjax[serve]"``); ``import hamjax`` never imports them.
"""

__all__ = []
