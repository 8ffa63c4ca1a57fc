"""Files in and out: datasets, ImageFolder trees and manifests, atomic writes, sample-grid pictures."""
