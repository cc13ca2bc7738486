"""Put on PYTHONPATH by tests/test_onnx_tflite_routes.py: every socket connection and name
lookup in this Python process (and its children, which inherit PYTHONPATH) fails, as on a
machine with no network. Loopback is refused too: nothing edgekit converts needs a socket."""

import socket


def _refuse(*args, **kwargs):
    raise OSError("network disabled by the test (tests/offline/sitecustomize.py)")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
