"""Probes, metrics and the loaded model: ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors
from service.deps import ServiceDep
from service.schemas import PROBLEM_RESPONSES, ModelsResponse

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the model is loaded and warmed up", responses={503: PROBLEM_RESPONSES[503]})
async def readyz(request: Request, service: ServiceDep) -> Response:
    try:
        service.check_ready()
    except errors.Problem as exc:  # a probe, not a client refused: not counted as a rejection
        return errors.problem_response(exc, request.state.request_id)
    return JSONResponse({"status": "ready", "model": service.model.name, "device": str(service.model.device)})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: ServiceDep) -> Response:
    if service.model is not None:
        service.metrics.update_gpu_memory(service.model.device)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelsResponse, summary="The loaded model", responses=PROBLEM_RESPONSES)
async def models(service: ServiceDep) -> ModelsResponse:
    service.check_ready()
    return ModelsResponse(models=[service.model_info()])
