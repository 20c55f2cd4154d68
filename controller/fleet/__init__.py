"""The devices' streams and what they send: sessions, admission, the writer, acks, figures."""
