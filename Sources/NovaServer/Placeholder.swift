import NovaCore
