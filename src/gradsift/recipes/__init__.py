"""Per method family: prepare the inputs of a method, then call its math and selection rule."""
