"""What the notebooks show and how they are checked (every notebook): printing (display, with
reading a reply, redaction, the SDK's log format and what a run left on disk in modules of their
own), the "Try it yourself" panels, the parameter rules and the one line that checks them and
prepares a run (prepare), timing tables and plots (03, 04), and the save hook that strips outputs.
"""
