"""db_proxy_server: the IM servers' only door to the database."""
