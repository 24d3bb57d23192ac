"""`python -m gateway`: serve the app on the configured host and port.
`python -m gateway keys create|list|revoke`: manage API keys (see gateway/keys_cli.py)."""

import logging
import sys

import uvicorn

from gateway.settings import GatewaySettings

if __name__ == "__main__":
    if sys.argv[1:2] == ["keys"]:
        from gateway.keys_cli import main

        sys.exit(main(sys.argv[2:]))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    uvicorn.run("gateway.app:app", host=settings.host, port=settings.port, proxy_headers=True)
