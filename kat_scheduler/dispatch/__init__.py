"""Dispatch: from a claimed candidate to a message on the broker.

* :mod:`~kat_scheduler.dispatch.dispatcher`: :class:`Dispatcher` claims candidates in the task
  store (one live task per hash), publishes the won claims and marks them published; pull
  schedulers' tasks are held for the API's pop instead;
* :mod:`~kat_scheduler.dispatch.messages`: the one message factory (a task or a stored row to
  the Celery message that runs it);
* :mod:`~kat_scheduler.dispatch.publishing`: the publisher contract and its broker
  implementations (Redis, kombu for RabbitMQ).
"""
