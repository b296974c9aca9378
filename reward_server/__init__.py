"""Mask and box geometry, SAM2 model building; later the SAM2 reward-server engine, Ray actor pool and client."""
