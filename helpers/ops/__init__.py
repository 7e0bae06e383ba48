"""Operating the web service for real users (notebook 08): a trace of every request with the
runtime's spans in it (``tracing.py``, ``store_calls.py``), the operator's ``/metrics``
(``metrics.py``), and reading exported traces back as rows, a waterfall and a table (``traces.py``).
"""
