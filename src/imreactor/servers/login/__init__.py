"""login_server: hands each client the least-loaded msg_server."""
