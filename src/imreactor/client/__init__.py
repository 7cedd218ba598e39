"""Client SDK: a TeamTalk client on the reactor (callback API) and a blocking wrapper for scripts.

A ten-line script::

    from imreactor.client import Client

    with Client.connect("127.0.0.1", 8000) as alice:
        alice.login("alice", "secret")
        ack = alice.send_text(bob_id, "hi")
        print("stored as message", ack.msg_id)
"""

from .blocking import Client, ClientError
from .session import ClientSession

__all__ = ["Client", "ClientError", "ClientSession"]
