"""chronoshard data plane: store, keyring, decryption cache, predictors and their servers."""
