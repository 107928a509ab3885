"""`u2moe serve`: a streaming websocket server speaking WeNet's protocol, batched across streams.

protocol.py holds WeNet's messages, engine.py the worker thread that decodes the chunks of all
open streams, routes.py the plain HTTP side of the same port (the web page, /healthz,
/transcribe), server.py the connections and their limits, static/ the web page.
"""
