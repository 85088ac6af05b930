"""APL: Absolute Position Localization pretraining of vision transformers, for teaching and reproduction."""
