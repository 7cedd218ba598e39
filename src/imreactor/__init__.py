"""imreactor: a reactor network library and a TeamTalk-compatible IM server suite."""

__version__ = "0.1.0"
