"""`python -m gateway`: serve the app on the configured host and port."""

import logging

import uvicorn

from gateway.settings import GatewaySettings

if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    uvicorn.run("gateway.app:app", host=settings.host, port=settings.port, proxy_headers=True)
