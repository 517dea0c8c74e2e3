import pytest

# shared harness modules whose asserts should explain themselves like a test module's
pytest.register_assert_rewrite("tests.h2wire")
