"""Test doubles shared by the test modules (``from support.<module> import ...``; conftest puts ``tests/`` on the path).

Product code never imports this package (tests/test_layering.py checks it).
"""
