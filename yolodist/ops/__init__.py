"""Pure tensor maths shared by the loss, evaluation and inference."""
