"""The code MLflow runs to load a front trial's pyfunc model ("models from code": no pickle): the project's FrontModel."""
import mlflow

from mtl_search.results.pyfunc import FrontModel

mlflow.models.set_model(FrontModel())
