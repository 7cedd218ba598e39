"""msg_server: client long connections, login, messages, presence."""
