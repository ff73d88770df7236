"""The one compiled part: predictor._h2, libnghttp2's HTTP/2 session for the native gRPC server.

It needs a C compiler, Python's headers and libnghttp2.so.14 (Debian libnghttp2-14; its -dev package is
not needed). `optional`: where it cannot be built the install still succeeds and KServe's grpcio server
serves the gRPC port instead (predictor/__main__.py logs why).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("predictor._h2", ["predictor/_h2.c"], extra_link_args=["-l:libnghttp2.so.14"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                             optional=True)])
