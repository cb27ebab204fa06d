# SPDX-License-Identifier: Apache-2.0
"""Placeholder: being written."""

__all__ = []
