"""Searches over quantization configurations (numpy + optuna, imported lazily; never Prefect or
MLflow): accuracy feedback for INT16 node sets, and the sensitivity ranking that seeds it."""
from core.search.accuracy_feedback import DEFAULT_STORAGE, AccuracyFeedbackResult, Candidate, search_int16_nodes
from core.search.evaluation import Evaluator, score_outputs
from core.search.ranking import rank_nodes_by_int8_noise

__all__ = ["AccuracyFeedbackResult", "Candidate", "DEFAULT_STORAGE", "Evaluator", "rank_nodes_by_int8_noise",
           "score_outputs", "search_int16_nodes"]
