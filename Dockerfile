FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps .
USER nobody
CMD ["celery", "-A", "kat_scheduler", "worker", "-Q", "boefjes"]
