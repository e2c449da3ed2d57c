"""Typed run requests: one dataclass per kind of job, whose fields are the command's options. The command line,
recipes, batch lines and Python callers all build these; each request checks itself and runs.

    from vmt.runs import RefineRequest
    RefineRequest(prompt="a red fox running through snow", steps=20).run("fox.mp4")
"""

from vmt.runs.batch import Batch
from vmt.runs.chain import WanChainRequest
from vmt.runs.compare import CompareRequest
from vmt.runs.keypoints import KeypointsRunRequest, KeypointsTrainRequest
from vmt.runs.longgen import LonggenReconstructRequest, LonggenSampleRequest, LonggenTrainRequest
from vmt.runs.refine import RefineRequest
from vmt.runs.transfer import TransferRequest

__all__ = ["Batch", "CompareRequest", "KeypointsRunRequest", "KeypointsTrainRequest", "LonggenReconstructRequest",
           "LonggenSampleRequest", "LonggenTrainRequest", "RefineRequest", "TransferRequest",
           "WanChainRequest"]
