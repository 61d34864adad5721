from django.urls import path

from destinations import views

app_name = "destinations"

urlpatterns = [
    path("", views.destination_list, name="list"),
    path("<int:pk>/", views.destination_detail, name="detail"),
    path("<int:pk>/test/", views.destination_test, name="test"),
]
