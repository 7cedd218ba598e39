"""route_server: presence across msg_servers, and relaying between them."""
