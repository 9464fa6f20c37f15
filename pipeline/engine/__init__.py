"""The local face engine: the Baidu Face v2 HTTP API on 127.0.0.1, built on dlib."""
