"""The LoRA kata grader: pytest checks that explain every failure (`pytest grader/ --impl DIR`)."""
