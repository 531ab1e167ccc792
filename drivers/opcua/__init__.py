"""OPC UA driver: subscriptions or polling, Basic256Sha256/Aes security, fresh-session recovery."""
