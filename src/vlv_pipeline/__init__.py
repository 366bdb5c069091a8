"""vlv-pipeline: Kedro pipelines for the Vision-Language-Vision auto-encoder.

``from vlv_pipeline import Captioner`` loads a saved captioner without Kedro
(``inference.py``); it is imported on first use, so importing the package stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["Captioner"]


def __getattr__(name: str):
    if name == "Captioner":
        from vlv_pipeline.inference import Captioner

        return Captioner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
