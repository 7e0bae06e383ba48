"""What the notebooks show and how they are checked: printing, the "Try it yourself" panels,
parameter rules, timing tables and plots, and the save hook that strips outputs.
"""
