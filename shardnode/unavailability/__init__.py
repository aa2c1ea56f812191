"""The predicted-unavailability model behind tiered tokens (docs/tokens.md): features, model, calibration."""
