"""Running the Copilot runtime (every notebook): find its binary, start it as a headless TCP server
guarded so it dies with its parent, attach to one by URL, connect clients; the TCP options on every
client when a notebook turns them on (transport) and a dead runtime failing fast (watchdog), which
the set-up cells name.
"""
