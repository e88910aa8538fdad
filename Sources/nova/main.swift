import NovaCore
import NovaSQLite
import NovaServer
import ArgumentParser
import AsyncHTTPClient
import ServiceLifecycle
import Prometheus
import GRDB
print("hi")
