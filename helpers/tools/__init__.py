"""Tools over the application's own per-user files: the virtual filesystem (notebook 02), the
three file tools bound to one user (notebook 02) or routed per call by session id (notebook 03).
"""
