"""The HEViTPose pose service: FastAPI app, detector, micro-batched pose worker, metrics."""
