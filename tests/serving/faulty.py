"""A fraud service that fails, deployed next to the real one by the tests (never shipped):
`.../fail` answers HTTP 500, `.../slow` never answers within the workflow's timeout."""

import asyncio

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(name="FaultyFraud", ray_actor_options={"num_cpus": 0.05})
class FaultyFraud:
    async def __call__(self, request: Request) -> JSONResponse:
        if request.url.path.endswith("/slow"):
            await asyncio.sleep(30)
            return JSONResponse({"scores": {}, "version": "never"})
        return JSONResponse({"error": "the model server crashed"}, status_code=500)


def faulty(args: dict):
    return FaultyFraud.bind()
