"""Reference answers to the katas: the code we would show as the model answer."""
