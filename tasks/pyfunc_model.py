"""The pyfunc model file MLflow logs ("models from code"): no cloudpickle of a Python object.
MLflow runs this file when the registered model is loaded."""
import mlflow

from tasks.pyfunc import SimaPyfunc

mlflow.models.set_model(SimaPyfunc())
