"""Where the face service is: the real one, and the local engine's defaults.

Shared by the client (:mod:`pipeline.client.config`), the engine
(:mod:`pipeline.engine.server`) and the commands, which otherwise share only ``api/``.
"""

#: The real service. The engine listens on http://127.0.0.1:8480 by default.
BAIDU_ENDPOINT = "https://aip.baidubce.com"
ENGINE_DEFAULT_PORT = 8480
#: Credentials the local engine accepts when none are configured (documented in
#: the README; they only ever open the local engine).
ENGINE_DEMO_API_KEY = "faceflow-demo-key"
ENGINE_DEMO_SECRET_KEY = "faceflow-demo-secret"
