"""Searches over quantization configurations (numpy + optuna, imported lazily; never Prefect or
MLflow): accuracy feedback for INT16 node sets, and the sensitivity ranking that seeds it."""
from core.search.accuracy_feedback import (
    DEFAULT_STORAGE,
    AccuracyFeedbackResult,
    Candidate,
    Confirmation,
    search_int16_nodes,
)
from core.search.evaluation import Evaluator, score_outputs
from core.search.options import DEFAULT_OPTIONS, OptionCandidate, OptionsSearchResult, search_quantization_options
from core.search.ranking import SimulatedOutputError, rank_nodes_by_int8_noise, rank_nodes_by_output_gain

__all__ = ["AccuracyFeedbackResult", "Candidate", "Confirmation", "DEFAULT_OPTIONS", "DEFAULT_STORAGE", "Evaluator",
           "OptionCandidate", "OptionsSearchResult", "SimulatedOutputError", "rank_nodes_by_int8_noise",
           "rank_nodes_by_output_gain", "score_outputs", "search_int16_nodes", "search_quantization_options"]
